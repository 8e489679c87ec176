"""HTTP/1.1 without I/O: llhttp codecs for requests and answers, and the exchange state machine."""
