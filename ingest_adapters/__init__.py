"""One module per channel (pure parsing), the HTTP app that mounts them, and the shared publisher."""
