"""The `migfuse` command groups, one module each, in the order of the pipeline.

  app.py       the Typer classes every group uses: one-line errors, pipeline order, root flags anywhere
  options.py   options shared by several commands, declared once (runtime, extraction run, training)
  data.py      data prepare | synth | export-pyskl
  backbone.py  backbone info | run | train video | train skeleton
  extract.py   extract video | context | skeleton | face (one door: migfuse.extract.entry.extract)
  cache.py     cache info | view | export-views
  fuse.py      fuse train | eval | predict | heads | late | import
  export.py    export <format> (one command per registered exporter) and score
  demo.py      demo

Library imports happen inside the commands, so `migfuse --help` and the data / cache commands start
without torch.
"""
