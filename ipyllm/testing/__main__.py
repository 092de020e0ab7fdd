"""``python -m ipyllm.testing``: run the stub server from a shell (``--help`` lists the options)."""

from ipyllm.testing._cli import main

main()
