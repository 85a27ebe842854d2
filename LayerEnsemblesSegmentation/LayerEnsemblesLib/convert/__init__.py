"""Converters: existing deep-supervision networks (nnU-Net v2, MONAI DynUNet) as layer-ensemble archives.

Their decoder outputs are already a layer ensemble; a converter rebuilds the network with its own
library, loads the weights (``weights_only=True``), and writes our TorchScript archive with every
decoder head and the preprocessing reproduced from the source's configuration. nnunetv2 and monai are
imported only inside :mod:`.nnunet` and :mod:`.dynunet`, when a conversion runs.
"""
