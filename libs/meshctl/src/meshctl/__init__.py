"""The mesh's dev tooling: ``python -m meshctl up|down|status|logs|canary`` (the Makefile's
targets), the local CA, and whole stacks for tests and benchmarks.

Nothing is re-exported here: supervisord starts ``python -m meshctl.pidlistener`` on every
stack, and importing this package must not pull in grpc, YAML and the rest for it.
"""
