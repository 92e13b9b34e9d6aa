/* Headers bound by ucx-sys (see build.rs). */
#include <ucs/type/status.h>
#include <ucp/api/ucp.h>
