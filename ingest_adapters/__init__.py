"""One module per channel (pure parsing), the HTTP app mounting them, the shared publisher."""
