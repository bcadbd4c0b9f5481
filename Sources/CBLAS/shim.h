#ifndef SWIFTDDP_CBLAS_SHIM_H
#define SWIFTDDP_CBLAS_SHIM_H

// Debian's libopenblas-dev puts cblas.h in a directory that pkg-config's `openblas` adds to the include path;
// it also declares openblas_set_num_threads / openblas_get_num_threads.
#include <cblas.h>

#endif
