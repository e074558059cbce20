"""leadflow's core, which every role imports: settings, errors, topic and stage names,
ids, Kafka clients, rules, normalization, dead letters and the suppression list."""

__version__ = "0.1.0"
