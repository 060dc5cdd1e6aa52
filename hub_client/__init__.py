"""Talk to a Hub (huggingface.co or ``loradex serve``) through huggingface_hub: sync, pull, publish.

``HubClient`` is the only object that touches the network; ``sync_hub``, ``pull_module`` and
``publish_folder`` receive one (and a ``RegistryStore``) from their caller.
"""

from hub_client.client import HubClient
from hub_client.publish import PublishResult, publish_folder
from hub_client.pull import PullResult, pull_module
from hub_client.sync import SyncOptions, SyncReport, sync_hub

__all__ = [
    "HubClient",
    "PublishResult",
    "PullResult",
    "SyncOptions",
    "SyncReport",
    "publish_folder",
    "pull_module",
    "sync_hub",
]
