"""All that sees an aiohttp Request: settings and app keys, request helpers, errors,
and the handlers (files, downloads, listing, tus), which never import each other."""
