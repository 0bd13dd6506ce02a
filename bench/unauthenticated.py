"""``python -m bench.unauthenticated ARGS``: ``python -m service ARGS`` with API keys not
checked, every caller an admin. The bench's comparison "no auth, no limiter" runs it to
measure what checking keys costs; nothing else should. The process logs a warning every
minute, shows ``auth: disabled`` in /health and sets ``singleton_auth_disabled`` to 1.
No configuration or environment variable turns key checks off in ``python -m service``."""

from __future__ import annotations

import sys

from service.__main__ import main

if __name__ == "__main__":
    sys.exit(main(check_keys=False))
