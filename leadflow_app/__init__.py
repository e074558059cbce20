"""The application shell: the `leadflow` command, the HTTP server's composition, its
access rules, OpenAPI document and read views. It may import every role package;
none of them imports it."""
