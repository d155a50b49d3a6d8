"""The `dx serve` process: the app composed, its life from start to shutdown, live reload.

- `server`: `Server` binds the port, starts the engines, shows the banner, serves, and shuts
  down in order (start / announce / wait / shutdown)
- `app`: `make_app` composes the edge (dxproxy.http), the routes (dxproxy.api) and the
  long-lived services (session, supervisor, router, loader, reloader) on one aiohttp app
- `reload`: the config file applied while serving (file watch, SIGHUP, /admin/reload)
- `banner`: the start-up banner (hardware, auth, models, as found)
- `sdnotify`: systemd's Type=notify protocol
- `logsetup`: logging to the console, in text or JSON
"""
