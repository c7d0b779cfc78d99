"""Collection of the package's doctests: the optional integrations' modules import their framework, so they are
collected only where its extra is installed (CI installs every extra; see the README's test command)."""

import importlib.util

collect_ignore = [f"boxloss/integrations/{name}.py" for name in ("transformers", "ultralytics")
                  if importlib.util.find_spec(name) is None]
