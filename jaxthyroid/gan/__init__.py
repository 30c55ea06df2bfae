"""GAN augmentation: a class-conditional DCGAN makes scintigrams, an SRGAN raises their resolution.

The paper's augmentation (DESIGN §1, points 1–2), composed from the models
(:mod:`jaxthyroid.models.dcgan`, :mod:`jaxthyroid.models.srgan`), their steps
(:mod:`jaxthyroid.train.gan_steps`) and the one training loop
(:func:`jaxthyroid.train.loop.fit`):

  images     real images as the GANs see them; batching helpers
  budget     step budgets and the index batches every GAN training draws
  dcgan      train_dcgan (conditional; projection D, optional AC-GAN head),
             load_dcgan_generator, dcgan_images
  srgan      train_srgan (SRResNet pre-training, then SRGAN; PSNR/SSIM against the
             noisy and, for phantom data, the noise-free high-resolution image)
  generate   generate, augment (a synthetic TFDS set), augment_command (the CLI)
  quality    generation_quality (a judge trained on real images), quality_gate

Imports (no cycles): budget, dcgan, srgan, generate and quality build on images;
dcgan and srgan on budget; generate on dcgan and srgan (and, for the CLI's verdict,
quality, lazily); quality on images only.

Images everywhere: real counts are normalised per image to [0, 1] (99.5th
percentile, :func:`jaxthyroid.data.transforms.normalize_counts`, as the classifier's
pipeline does) at the source size, then area-averaged to the working size; the GANs
see them as ``2x - 1`` in [-1, 1] (tanh range). LR images for the SRGAN are the HR
images area-averaged by ``scale``, which is also how a DCGAN image at
``hr_size / scale`` relates to a real one at ``hr_size``.

Work directories (every training resumes from its latest checkpoint after a kill,
bit-identically; a finished one — ``done.json`` — returns its summary at once)::

  DCGAN   config.json, checkpoints/latest/<step>/, metrics.jsonl, tb/,
          samples_step<k>.png (one row per finding set), done.json
  SRGAN   config.json, pretrain/{checkpoints, metrics.jsonl, done.json},
          gan/{checkpoints, metrics.jsonl, done.json}, sr_comparison.png, done.json
"""
