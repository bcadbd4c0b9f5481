#ifndef SWIFTDDP_CMPI_SHIM_H
#define SWIFTDDP_CMPI_SHIM_H

#include <mpi.h>

// Open MPI defines its predefined handles as macros that cast the address of a global
// (OMPI_PREDEFINED_GLOBAL), which Swift cannot import; these getters hand them over as values.

static inline MPI_Comm swiftddp_MPI_COMM_WORLD(void) { return MPI_COMM_WORLD; }
static inline MPI_Comm swiftddp_MPI_COMM_NULL(void) { return MPI_COMM_NULL; }
static inline MPI_Info swiftddp_MPI_INFO_NULL(void) { return MPI_INFO_NULL; }
static inline MPI_Request swiftddp_MPI_REQUEST_NULL(void) { return MPI_REQUEST_NULL; }
static inline MPI_Errhandler swiftddp_MPI_ERRORS_RETURN(void) { return MPI_ERRORS_RETURN; }
static inline MPI_Status *swiftddp_MPI_STATUS_IGNORE(void) { return MPI_STATUS_IGNORE; }
static inline void *swiftddp_MPI_IN_PLACE(void) { return MPI_IN_PLACE; }

static inline MPI_Datatype swiftddp_MPI_FLOAT(void) { return MPI_FLOAT; }
static inline MPI_Datatype swiftddp_MPI_DOUBLE(void) { return MPI_DOUBLE; }
static inline MPI_Datatype swiftddp_MPI_INT32_T(void) { return MPI_INT32_T; }
static inline MPI_Datatype swiftddp_MPI_INT64_T(void) { return MPI_INT64_T; }
static inline MPI_Datatype swiftddp_MPI_UINT8_T(void) { return MPI_UINT8_T; }
static inline MPI_Datatype swiftddp_MPI_UINT16_T(void) { return MPI_UINT16_T; }
static inline MPI_Datatype swiftddp_MPI_INT(void) { return MPI_INT; }

static inline MPI_Op swiftddp_MPI_SUM(void) { return MPI_SUM; }
static inline MPI_Op swiftddp_MPI_MAX(void) { return MPI_MAX; }
static inline MPI_Op swiftddp_MPI_MIN(void) { return MPI_MIN; }

// Plain enums in Open MPI but macros in MPICH; getters give one `Int32` spelling for both.
static inline int swiftddp_MPI_THREAD_SINGLE(void) { return MPI_THREAD_SINGLE; }
static inline int swiftddp_MPI_THREAD_FUNNELED(void) { return MPI_THREAD_FUNNELED; }
static inline int swiftddp_MPI_THREAD_SERIALIZED(void) { return MPI_THREAD_SERIALIZED; }
static inline int swiftddp_MPI_THREAD_MULTIPLE(void) { return MPI_THREAD_MULTIPLE; }
static inline int swiftddp_MPI_COMM_TYPE_SHARED(void) { return MPI_COMM_TYPE_SHARED; }
static inline int swiftddp_MPI_T_ERR_INVALID_NAME(void) { return MPI_T_ERR_INVALID_NAME; }
static inline int swiftddp_MPI_ANY_SOURCE(void) { return MPI_ANY_SOURCE; }

#endif
