import sys

from lightning_asr.cli import main

sys.exit(main())
