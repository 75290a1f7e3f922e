"""Composition root: builds the agent's parts and starts and stops them in order.

The same :class:`Agent` runs headless (plain asyncio, here) and inside the
tray app (on the qasync loop, in :mod:`desktop_agent.ui`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable

from desktop_agent.config import Config, ConfigError
from desktop_agent.config.secrets import agent_id, dialout_token
from desktop_agent.engine.errors import EngineError
from desktop_agent.firststart import create_default_repository
from desktop_agent.jobs import EventBus, JobController
from desktop_agent.jobs.conditions import ConditionHub, Conditions
from desktop_agent.jobs.scheduler import Scheduler
from desktop_agent.server import AgentServer
from desktop_agent.server.dialout import DialOut, DialOutSettings, default_hello
from desktop_agent.server.ws import make_tls_context
from desktop_agent.system.power import Providers, start_providers
from desktop_agent.termprogress import show_progress_on_terminal

__all__ = ["Agent", "first_start", "run_headless"]

log = logging.getLogger(__name__)

SWITCH_INTERVAL = 0.001  # seconds (Python's default is 0.005)


class Agent:
    """The event bus, the job controller, the /ws server, the scheduler and the
    condition providers it decides by.

    ``system_bus``: the D-Bus system bus address the providers use (None: the
    usual one; tests pass a private bus); ``providers=False`` starts none
    (the conditions stay unknown, which stops nothing). ``scheduler`` builds
    the scheduler (tests give it simulated clocks).
    """

    def __init__(
        self,
        config: Config,
        *,
        host: str | None = None,
        port: int | None = None,
        schedule: bool = True,
        providers: bool = True,
        system_bus: str | None = None,
        scheduler: Callable[[JobController, ConditionHub], Scheduler] | None = None,
    ) -> None:
        self.config = config
        self.bus = EventBus()
        self.controller = JobController(config, self.bus)
        self.hub = ConditionHub()
        self._host, self._port = host, port
        make = scheduler or Scheduler
        self.scheduler = make(self.controller, self.hub) if schedule else None
        self.server = self._make_server(config)
        self._want_providers = providers and schedule
        self._system_bus = system_bus
        self.providers: Providers | None = None
        # the connection out to [server] url (None: off), built by start()
        self.dialout: DialOut | None = None
        self._started = False
        self._restart: asyncio.Task[None] | None = None
        self._redials: set[asyncio.Task[None]] = set()
        self.hub.on_wake(self._woke)
        self._network_up: bool | None = None
        self.hub.listen(self._conditions_changed)

    async def start(self) -> None:
        """Controller first (so commands have somewhere to go), then the server."""
        # The loop thread shares the GIL with the backup's threads; a shorter
        # switch interval lets it answer /ws and redraw within milliseconds.
        sys.setswitchinterval(SWITCH_INTERVAL)
        await self.controller.start()
        await self.server.start()
        if self._want_providers:
            # each provider that cannot start (no D-Bus, no UPower...) is left out, with a log line
            self.providers = await start_providers(self.hub, system_bus=self._system_bus)
        if self.scheduler is not None:
            self.scheduler.start()
        self._started = True
        self._start_dialout()

    def _make_dialout(self, config: Config) -> DialOut | None:
        """The connection out to ``[server] url``, or None when that is off.

        Without a credential it is still made: it says "refused" with the
        reason (the tray and settings show it) and does not dial.
        """
        server = config.server
        if not server.url:
            return None
        try:
            ident = agent_id(config)
        except ConfigError as exc:
            log.warning("not dialling the backup server: %s", exc)
            ident = ""
        settings = DialOutSettings(
            url=server.url,
            token="",  # read by the dial-out on a worker thread (the keyring may be slow)
            agent_id=ident,
            ca_file=config.resolve_path(server.ca_file) if server.ca_file else None,
            allow_insecure=server.allow_insecure,
        )
        return DialOut(
            self.server,
            settings,
            hello=default_hello(),
            load_token=lambda: dialout_token(config) or "",
        )

    def _start_dialout(self) -> None:
        self.dialout = self._make_dialout(self.config)
        if self.dialout is not None:
            self.dialout.start()

    def restart_dialout(self) -> None:
        """Dial ``[server] url`` anew (a new credential, or new settings): the
        new connection is in :attr:`dialout` at once, the old one closes in a task."""
        if not self._started:
            return
        old = self.dialout
        self._start_dialout()
        if old is not None:
            task = asyncio.get_running_loop().create_task(old.stop())
            self._redials.add(task)
            task.add_done_callback(self._redials.discard)

    def _woke(self) -> None:
        if self.dialout is not None:
            self.dialout.reconnect_now()  # the network is back: no waiting out the backoff

    def _conditions_changed(self, conditions: Conditions) -> None:
        was, self._network_up = self._network_up, conditions.network_up
        if conditions.network_up and not was:
            self._woke()  # a network (again): dial at once

    def _make_server(self, config: Config) -> AgentServer:
        # TLS files resolved like every path in the config (relative to its folder)
        tls = config.tls_files
        ssl_context = make_tls_context(*tls) if tls is not None else None
        return AgentServer(
            config.agent,
            self.controller,
            self.bus,
            host=self._host,
            port=self._port,
            ssl_context=ssl_context,
            scheduler=self.scheduler,
        )

    def apply_config(self, config: Config) -> None:
        """Use a new configuration without a restart.

        Jobs that start from now on use it; the /ws server takes a new token
        and origins at once (open connections stay) and rebinds when the
        listen address or TLS files changed.
        """
        old = self.config.agent
        old_server = self.config.server
        self.config = config
        self.controller.update_config(config)
        self.server.config = config.agent
        if config.server != old_server:
            self.restart_dialout()
        if self.scheduler is not None:
            self.scheduler.tick()  # decide by the new schedule now, not at the next tick
        if config.agent.token != old.token:
            self.server.disconnect_all("the access token changed")
        rebind = (old.listen, old.tls_cert, old.tls_key) != (
            config.agent.listen,
            config.agent.tls_cert,
            config.agent.tls_key,
        )
        if rebind:
            self._restart = asyncio.get_event_loop().create_task(self._rebind())

    async def _rebind(self) -> None:
        await self.server.stop()
        self.server = self._make_server(self.config)
        await self.server.start()
        if self.dialout is not None:
            await self.dialout.use_server(self.server)  # the old server passes nothing on
        log.info("/ws now at %s", self.server.url)

    async def stop(self) -> None:
        """Stop scheduling, end jobs (clients see them end), then close the server."""
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self.providers is not None:
            await self.providers.close()  # releases any inhibitor lock
        await self.controller.stop()
        await self.server.drain(timeout=2.0)  # the last events reach the clients
        self._started = False
        if self.dialout is not None:
            await self.dialout.stop()
        for task in list(self._redials):
            await asyncio.gather(task, return_exceptions=True)
        await self.server.stop()


def first_start(config: Config) -> None:
    """Create the default repository on a first start (the headless agent logs
    to stderr too, so the user reads that line there)."""
    try:
        create_default_repository(config)
    except (ConfigError, EngineError) as exc:
        log.warning("could not create the default repository: %s", exc)


async def _serve(config: Config) -> None:
    agent = Agent(config)
    # on a terminal, the headless agent shows its jobs' progress
    show_progress_on_terminal(agent.bus.subscribe)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # Windows
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
    await agent.start()
    log.info("desktop-agent running headless; /ws at %s", agent.server.url)
    await stop.wait()
    log.info("stopping: a running backup is cancelled (what it stored is kept)")
    await agent.stop()
    log.info("stopped")


def run_headless(config: Config) -> int:
    """Run the agent without UI until SIGTERM/SIGINT; returns the exit status.

    On a first start the default repository is created (see
    :mod:`desktop_agent.firststart`), so the first scheduled backup runs.
    """
    first_start(config)
    asyncio.run(_serve(config))
    return 0
