"""One module per stage of ``dvc.yaml``; each ``run(params)`` reads and writes the files
``ser.paths`` names."""
