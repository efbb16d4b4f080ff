"""What `make repo` runs, in data-path order: import_weights -> export -> passes -> quantize -> engines -> model_config -> repository.

Imports the model library (`segformer`) and the client's image preprocessing (calibration reads images exactly as
the client sends them), and of `server` only the runtime the served programs run (`server.models.segformer_runtime`:
the build-time checks run the rows with the code that serves them); never the rest of `server`, nor `training`,
`bench` or `loadtest`. The import name is ``build`` because the
product's layout promises ``build/``; it shadows PyPA's ``build`` tool inside this project's environment only.
"""
