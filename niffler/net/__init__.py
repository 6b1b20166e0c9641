"""DICOM networking, used by niffler-cold and niffler-meta.

- :mod:`~niffler.net.address`: AE titles and addresses, associations that
  always release or abort and say why they failed.
- :mod:`~niffler.net.scp`: the Storage SCP (cold's C-MOVE destination,
  meta's listener) and the transfer-syntax policy it negotiates with.
- :mod:`~niffler.net.scu`: C-ECHO, C-FIND, C-MOVE and C-GET as a requestor.
- :mod:`~niffler.net.writer`: the instance writer (FilePath template, atomic
  write of the bytes as received) and :mod:`~niffler.net.scan`, the header scan.
- :mod:`~niffler.net.messages`: the small records the layers hand each other.
- :mod:`~niffler.net.accel`: the one seam to the pynetdicom 3.0 accelerator
  (:mod:`niffler.net._pynetdicom30`, the only module that touches pynetdicom
  internals). Its import is guarded: when it is missing, switched off
  (``NIFFLER_NET_ACCEL=0``) or the installed pynetdicom is not one it was
  verified on, the same calls go through pynetdicom's public API.

Nothing outside this package uses pynetdicom directly.
"""
