import sys

from provisioning.cli.main import main

sys.exit(main())
