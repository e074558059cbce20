"""Local stand-ins for outside SaaS that tests cannot reach (and only those)."""
