pytest_plugins = [
    "tests.support.chat", "tests.support.mongo", "tests.support.redis", "tests.support.nodes", "tests.support.browser",
]
