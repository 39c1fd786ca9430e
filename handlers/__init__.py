"""Socket.IO events, their schemas, the error envelope and token verification."""
