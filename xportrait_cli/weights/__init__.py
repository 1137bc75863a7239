"""Weights: the X-Portrait checkpoint, its converted form and the landmark weights; where they live
and how they are fetched.

What lives where:

* **Checkpoint** ``model_state-415001.th`` (12.3 GB, fp32 pickle) from the Hugging Face repo
  :data:`~xportrait_cli.weights.registry.REPO_ID`, in the huggingface_hub cache (``--cache-dir``,
  else ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``). Downloaded by
  ``hf_hub_download``, which resumes an interrupted transfer with Range requests and honours
  ``HF_ENDPOINT`` and ``HF_TOKEN`` (both read when the function is called, not when huggingface_hub
  is imported). Verified against the Hub's SHA-256 (the LFS ``ETag``, which is also the blob's file
  name in the cache). (:mod:`.hub`)
* **Converted folder** ``<model_dir>/x-portrait-<commit12>-<dtype>/`` written once by
  :func:`xportrait_cli.pipeline.loading.convert_checkpoint`: diffusers' pipeline layout
  (``model_index.json`` and one subfolder per component), loaded by
  ``XPortraitPipeline.from_pretrained`` (fast, memory-mapped). A folder in the old format
  (``config.json`` + ``networks.safetensors``) counts as not converted and is converted again.
  ``model_dir`` defaults to ``<xportrait home>/models``; the home is ``XPORTRAIT_HOME``, else
  ``$XDG_CACHE_HOME/xportrait``, else ``~/.cache/xportrait``. (:mod:`.registry`)
* **Landmark weights** for face-alignment: FAN-68 ``2DFAN4-11f355bf06.pth.tar`` and the S3FD
  detector ``s3fd-619a316812.pth`` in ``$TORCH_HOME/hub/checkpoints/`` (``torch.hub.get_dir()``),
  the names face-alignment 1.5 looks for. Fetched from a plain HTTP server by a streamed, resumable
  GET under a per-file lock; no checksum is published for them, so their size is checked against
  the server's and recorded. (:mod:`.http`)
* **Manifest** ``<xportrait home>/weights.json``: what was downloaded, verified and converted, so
  that :func:`~xportrait_cli.weights.registry.default_model_path` finds the model without network
  access and ``check_weights`` need not re-hash 12 GB when nothing changed. (:mod:`.registry`)

The verbs — ``download_weights`` and ``run`` (what ``xportrait download-weights`` calls) — are in
:mod:`.download`; ``check_weights`` (no network) and the report types in :mod:`.check`.
:mod:`.registry` imports neither torch nor the models, so ``xportrait_cli.face`` and the option
validation can use it. Nothing here prints: progress goes to an optional
``progress(label, done, total)`` callback.
"""
