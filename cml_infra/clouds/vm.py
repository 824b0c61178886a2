"""What the three VM clouds share: catalog resolution, the boot path, user-data encoding."""

from __future__ import annotations

import base64
import gzip
from abc import abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from cml_infra.clouds.base import Boot, Cloud
from cml_infra.errors import UsageError
from cml_infra.placement import Placement
from cml_infra.spec import Network, RunnerSpec

if TYPE_CHECKING:
    # The catalog (pydantic) loads when a VM cloud resolves a placement, not with the registry.
    from cml_infra.catalog import Catalog, Offer

DEFAULT_SIZE = "m"


class VmCloud(Cloud):
    """A cloud whose instances are VMs booted from a startup script and priced by a catalog."""

    # True where an instance needs a zone (GCP); False where the cloud picks one unless told
    # (AWS), so that `up` lets it pick first and names the catalog's zones only after that.
    HAS_CATALOG = True
    ZONE_REQUIRED = True
    # The agent's hook for this cloud's spot interruption notice (agent/hooks.py).
    PREEMPTION_PROBE: str | None = None
    # The CPUs the module has default images for; a type of another needs --image.
    DEFAULT_IMAGE_ARCHES: tuple[str, ...] = ("x86_64",)
    # Network field → the module variable it sets. Each is passed only when its flag is given:
    # the module's default holds otherwise, and a fork may leave out what it does not use.
    NETWORK_VARS: ClassVar[Mapping[str, str]] = {}
    # The boot disk sizes in GB the module takes (--disk-size), lowest and highest.
    DISK_SIZE_GB: ClassVar[tuple[int, int]]
    # The disk size in GB of the module's default images, GPU (True) or not (False): a boot disk
    # cannot be smaller than its image.
    IMAGE_DISK_GB: ClassVar[Mapping[bool, int]]

    @property
    def catalog(self) -> Catalog:
        from cml_infra.catalog import load

        return load(self.name)

    def resolve(
        self, spec: RunnerSpec, *, region: str | None, spot: bool, max_price: float | None
    ) -> Placement:
        from cml_infra import catalog as catalogs

        catalog = self.catalog
        index = catalogs.current_offerings(self.name)
        # A region the data does not know is taken only when --type says the user insists.
        region = catalogs.resolve_region(
            catalog, index, region, insist=spec.instance_type is not None
        )
        offer = self._offer(spec, catalog)
        self.validate(spec, offer, spot=spot, max_price=max_price)
        arch = catalog.arch(offer.instance_type)
        if spec.image is None and arch not in self.DEFAULT_IMAGE_ARCHES:
            raise UsageError(
                "--image",
                f"{offer.instance_type} has an {arch} CPU and the {self.name} module's default "
                f"images are {', '.join(self.DEFAULT_IMAGE_ARCHES)}: give an {arch} image",
            )
        gpu = offer.gpu is not None or catalog.has_builtin_gpu(offer.instance_type)
        network = self.network_of(spec)
        self.check_disk(spec, network, gpu=gpu)
        self.check_network(spec, network, region=region)
        return Placement(
            cloud=self.name,
            region=region,
            instance_type=offer.instance_type,
            hourly_price=catalogs.hourly(offer, index, region, spot, catalog),
            spot=spot,
            max_price=max_price if spot else None,
            gpu=offer.gpu or ("unknown" if gpu else None),
            gpu_count=offer.gpu_count,
            accelerator=offer.accelerator,
            image=spec.image,
        )

    def _offer(self, spec: RunnerSpec, catalog: Catalog) -> Offer:
        from cml_infra.catalog import Offer

        if spec.instance_type is not None:
            if spec.gpu is not None:
                return self.attach_gpu(spec, spec.instance_type)
            known = catalog.for_type(spec.instance_type)
            if known is not None:
                return known
            from cml_infra import ui

            # Accepted because the user insists, but never silently: it has no price here
            # (with --budget that is the error, said once, where the budget is checked).
            if spec.budget is None:
                ui.warn(f"--type {spec.instance_type}: not in the {self.name} catalog; used as "
                        "given, unpriced (no cost figure)")  # fmt: skip
            return Offer(
                id=spec.instance_type,
                instance_type=spec.instance_type,
                vcpus=0,
                memory_gib=0,
                price=None,
            )
        if spec.gpu is not None:
            return catalog.for_gpu(spec.gpu, spec.gpu_count)
        return catalog.for_size(spec.size or DEFAULT_SIZE)

    def attach_gpu(self, spec: RunnerSpec, instance_type: str) -> Offer:
        """A native type plus GPUs: only clouds that attach GPUs to VMs (GCP n1) allow it."""
        raise UsageError(
            "--type",
            f"{self.name} types come with their GPUs; give --type {instance_type} or "
            f"--gpu {spec.gpu}:{spec.gpu_count}, not both",
        )

    def zones(self, region: str) -> tuple[str | None, ...]:
        """The yaml's zones of `region`, else those the offerings list (a region only the
        offerings know); the zones that sell a row, cheapest first, are
        `catalog.offerings_of(...).zones(offer, region, spot)`."""
        from cml_infra import catalog

        zones = tuple(self.catalog.regions.get(region, ())) or tuple(
            catalog.current_offerings(self.name).offerings.regions.get(region, ())
        )
        return zones if self.ZONE_REQUIRED or not zones else (None, *zones)

    def validate(
        self, spec: RunnerSpec, offer: Offer, *, spot: bool, max_price: float | None
    ) -> None:
        """Cloud-specific checks of image, tags and prices, before anything is created."""

    def check_disk(self, spec: RunnerSpec, network: Network, *, gpu: bool) -> None:
        """--disk-size within what the cloud and the module take, and, with the module's own
        image, no smaller than it (another image's size is the cloud's to check)."""
        size = network.disk_size_gb
        if size is None:
            return
        low, high = self.DISK_SIZE_GB
        if not low <= size <= high:
            raise UsageError("--disk-size", f"{size} GB: {self.name} takes {low} to {high} GB")
        needed = self.IMAGE_DISK_GB[gpu]
        if spec.image is None and size < needed:
            kind = "GPU" if gpu else "CPU"
            raise UsageError(
                "--disk-size",
                f"{size} GB is smaller than the {self.name} {kind} image's own disk ({needed} GB)",
            )

    def network_vars(self, spec: RunnerSpec) -> dict[str, Any]:
        """The module variables of the network flags given (see NETWORK_VARS)."""
        network = spec.network
        found: dict[str, Any] = {}
        for name in network.given():
            if name in self.NETWORK_VARS:
                value = getattr(network, name)
                found[self.NETWORK_VARS[name]] = list(value) if isinstance(value, tuple) else value
        return found

    def check_network(self, spec: RunnerSpec, network: Network, *, region: str) -> None:
        """The cloud's own format checks of the network flags it takes, before anything is
        created; `region`: the region being resolved."""

    def boot(self, spec: RunnerSpec) -> Boot:
        return Boot(
            self_destroy=self.self_destroy(),
            preemption_probe=self.PREEMPTION_PROBE if spec.spot else None,
            ttl_timer=True,
            arch=self.catalog.arch(self._offer(spec, self.catalog).instance_type),
        )

    @abstractmethod
    def self_destroy(self) -> tuple[str, ...]:
        """The agent's way to end the instance, with no long-lived credentials on it."""


def encode_user_data(
    script: str, *, cloud: str, limit: int, base64_counts: bool, team_script: str | None = None
) -> tuple[str, bool]:
    """The startup script as base64, gzip-compressed only when it would not fit otherwise.

    `limit` is the cloud's user-data limit in bytes, measured before base64 unless
    `base64_counts` (Azure counts the base64 text). cloud-init unpacks gzip by itself.
    `team_script`: the `--startup-script` the script carries, which the error names.
    """
    raw = script.encode("utf-8")
    for payload, compressed in ((raw, False), (gzip.compress(raw, mtime=0), True)):
        encoded = base64.b64encode(payload).decode("ascii")
        size = len(encoded) if base64_counts else len(payload)
        if size <= limit:
            return encoded, compressed
    raise too_large(
        len(raw), size, cloud=cloud, limit=limit, what="user data", team_script=team_script
    )


def too_large(
    raw: int, packed: int, *, cloud: str, limit: int, what: str, team_script: str | None
) -> UsageError:
    """The one-line error for a startup script over the cloud's limit: it names
    --startup-script when the team's script is in it, since that is what the user can shrink."""
    sizes = f"{raw:,} bytes, {packed:,} even compressed; {cloud} allows {limit:,} bytes of {what}"
    if team_script is None:
        return UsageError("startup script", sizes)
    return UsageError(
        "--startup-script",
        f"your script ({len(team_script.encode('utf-8')):,} bytes) makes the startup script "
        f"{sizes}",
    )
