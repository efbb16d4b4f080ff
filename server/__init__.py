"""The server room: the Triton launcher (`make serve`/`stop`, the `tritonserver` shim), `make demo`, and in
`server/models/` the programs `make repo` copies into model directories to run inside Triton's python backend.

May import the model library, `client` and `build` (the demo builds a model and segments with the client); never
`training`, `bench` or `loadtest`.
"""
