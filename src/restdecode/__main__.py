import sys

from restdecode.cli import main

sys.exit(main())
