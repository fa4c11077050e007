"""Stand-ins for the parts of NetBackup that tests, benchmarks and `nbwss demo` need.

Real HTTP servers on loopback, built to the spec's shapes (section 8), with hooks to
make them slow, failing or down. Not used by the daemon itself.
"""
