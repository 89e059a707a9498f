import sys

from agents.report.cli import main

sys.exit(main())
