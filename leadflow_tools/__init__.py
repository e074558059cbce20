"""Development tools, never shipped in the production image: the local stack (`leadflow
up`), the project's own Kafka broker, the benchmarks with their sample generators and
the reference answer (oracle) they check the stream against. They may import every
package; none imports them (the command line plugs their verbs in when they are there)."""
