"""The servers the harness starts: this server's launcher and its peers."""
