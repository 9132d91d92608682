import sys

from sorap2p.cli import main

sys.exit(main())
