import sys

from triage.app.cli import main

sys.exit(main())
