MAX_BYTES: int
MAX_ARRAY_LENGTH: int
MAX_MAP_LENGTH: int
MAX_DEPTH: int

def check(data: bytes, ext1_min: float, ext1_max: float, budget: int, /) -> str | bool | None: ...
def find_str_key(data: bytes, key: bytes, /) -> tuple[int, int] | None: ...
