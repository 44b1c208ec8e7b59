from typing import Any, Callable, Dict, List, Optional, Union

from .errors import *

class Environment:
    id: str
    name: str
    mode: str
    url: str
    env_type: str
    container_id: Optional[str]
    pid: Optional[int]
    def call(self, method: str, *args: Any, _timeout: Optional[float] = None, **kwargs: Any) -> Any: ...
    def __getattr__(self, name: str) -> Callable[..., Any]: ...
    def list_methods(self) -> List[Dict[str, Any]]: ...
    def is_ready(self) -> bool: ...
    def cleanup(self) -> None: ...
    def __enter__(self) -> "Environment": ...
    def __exit__(self, *exc: Any) -> bool: ...

def load_env(
    image: Optional[str] = None,
    *,
    path: Optional[str] = None,
    url: Optional[str] = None,
    mode: str = "auto",
    env_vars: Optional[Dict[str, str]] = None,
    name: Optional[str] = None,
    env_type: Optional[str] = None,
    mem_limit: Union[int, str, None] = None,
    cpu_limit: Optional[float] = None,
    startup_timeout: Optional[float] = None,
    call_timeout: Optional[float] = None,
    token: Optional[str] = None,
    keep: bool = False,
    lease: Optional[float] = ...,
    server_program: Optional[str] = None,
    hosts: Union[List[str], str, None] = None,
) -> Environment: ...
def build_image_from_env(env_path: str, image_tag: str, nocache: bool = False, quiet: bool = False, buildargs: Optional[Dict[str, str]] = None, base_image: Optional[str] = None, progress: Optional[Callable[[str, str], None]] = None, dockerfile: Optional[str] = None) -> str: ...
def remove_image(image: str) -> None: ...
def list_active_environments() -> List[Environment]: ...
def get_environment(id_or_name: str) -> Optional[Environment]: ...
def cleanup_all_environments() -> int: ...
