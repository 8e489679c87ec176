"""Pure code: no sockets, no asyncio, no clock or environment reads (time is passed in)."""
