"""voxrelay: the shared core (routing token, CLI root)."""
