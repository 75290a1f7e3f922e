"""Message dataclasses and their JSON codec for /ws (sans-I/O)."""
