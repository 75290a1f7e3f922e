"""The websockets server for /ws: authentication, fan-out, command routing."""
