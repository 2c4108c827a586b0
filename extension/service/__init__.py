"""The service: the Flask extension, who may call it, its jobs and its own state store."""
