"""The aiohttp app: the route table in one place, thin handlers."""
