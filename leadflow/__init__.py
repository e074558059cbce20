"""leadflow: the composition root — settings, error taxonomy, topic and stage names, CLI."""

__version__ = "0.1.0"
