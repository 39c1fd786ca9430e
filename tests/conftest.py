pytest_plugins = ["tests.support.chat"]
