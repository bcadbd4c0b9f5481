#ifndef SWIFTDDP_CHDF5_SHIM_H
#define SWIFTDDP_CHDF5_SHIM_H

#include <hdf5.h>

// HDF5's predefined types, property-list classes and flags are macros that call H5open() and read a
// global id (H5T_NATIVE_FLOAT is `(H5OPEN H5T_NATIVE_FLOAT_g)`), which Swift cannot import; these getters
// evaluate them.

static inline hid_t swiftddp_H5P_DEFAULT(void) { return H5P_DEFAULT; }
static inline hid_t swiftddp_H5S_ALL(void) { return H5S_ALL; }
static inline hid_t swiftddp_H5E_DEFAULT(void) { return H5E_DEFAULT; }
static inline hid_t swiftddp_H5P_DATASET_CREATE(void) { return H5P_DATASET_CREATE; }
static inline hid_t swiftddp_H5P_FILE_ACCESS(void) { return H5P_FILE_ACCESS; }
static inline hid_t swiftddp_H5P_FILE_CREATE(void) { return H5P_FILE_CREATE; }
static inline hid_t swiftddp_H5P_LINK_CREATE(void) { return H5P_LINK_CREATE; }
static inline hid_t swiftddp_H5P_GROUP_CREATE(void) { return H5P_GROUP_CREATE; }

static inline unsigned swiftddp_H5F_ACC_RDONLY(void) { return H5F_ACC_RDONLY; }
static inline unsigned swiftddp_H5F_ACC_RDWR(void) { return H5F_ACC_RDWR; }
static inline unsigned swiftddp_H5F_ACC_TRUNC(void) { return H5F_ACC_TRUNC; }
static inline unsigned swiftddp_H5F_ACC_EXCL(void) { return H5F_ACC_EXCL; }

// In-memory element types (what Swift buffers hold).
static inline hid_t swiftddp_H5T_NATIVE_FLOAT(void) { return H5T_NATIVE_FLOAT; }
static inline hid_t swiftddp_H5T_NATIVE_DOUBLE(void) { return H5T_NATIVE_DOUBLE; }
static inline hid_t swiftddp_H5T_NATIVE_INT32(void) { return H5T_NATIVE_INT32; }
static inline hid_t swiftddp_H5T_NATIVE_INT64(void) { return H5T_NATIVE_INT64; }
static inline hid_t swiftddp_H5T_NATIVE_UINT8(void) { return H5T_NATIVE_UINT8; }
static inline hid_t swiftddp_H5T_NATIVE_UINT16(void) { return H5T_NATIVE_UINT16; }

// On-disk element types: little-endian standard types, so files read the same on every machine.
static inline hid_t swiftddp_H5T_IEEE_F32LE(void) { return H5T_IEEE_F32LE; }
static inline hid_t swiftddp_H5T_IEEE_F64LE(void) { return H5T_IEEE_F64LE; }
static inline hid_t swiftddp_H5T_STD_I32LE(void) { return H5T_STD_I32LE; }
static inline hid_t swiftddp_H5T_STD_I64LE(void) { return H5T_STD_I64LE; }
static inline hid_t swiftddp_H5T_STD_U8LE(void) { return H5T_STD_U8LE; }
static inline hid_t swiftddp_H5T_STD_U16LE(void) { return H5T_STD_U16LE; }
static inline hid_t swiftddp_H5T_C_S1(void) { return H5T_C_S1; }

// H5T_VARIABLE is `((size_t)-1)`, a cast Swift does not import.
static inline size_t swiftddp_H5T_VARIABLE(void) { return H5T_VARIABLE; }

// H5Lget_info and H5Oget_info changed their structs in 1.12 (an address became a token); these helpers give one
// spelling for 1.10 (Debian 12, Ubuntu 22.04) and later.

// The type of the link `name` seen from `location` (H5L_TYPE_HARD, _SOFT, _EXTERNAL), or -1 when it cannot be read.
static inline int swiftddp_link_type(hid_t location, const char *name) {
#if H5_VERSION_GE(1, 12, 0)
    H5L_info2_t info;
    if (H5Lget_info2(location, name, &info, H5P_DEFAULT) < 0) return -1;
#else
    H5L_info_t info;
    if (H5Lget_info(location, name, &info, H5P_DEFAULT) < 0) return -1;
#endif
    return (int)info.type;
}

// Calls `visit` with the name of every link in `group`, in the order HDF5 stores them (H5Literate, H5_ITER_NATIVE),
// until it returns non-zero. For a group in dense storage (a fractal heap and B-tree: groups of many links) no table of
// all links is built first: on such a damaged group HDF5 1.10's by-index lookups (H5Lget_name_by_idx) release that
// table half filled and crash, where this stops at the first bad link with an error. (A compact group, whose few links
// sit in its object header, is read into a table either way.)
typedef herr_t (*swiftddp_name_visitor)(const char *name, void *context);
struct swiftddp_name_visit { swiftddp_name_visitor visit; void *context; };
#if H5_VERSION_GE(1, 12, 0)
static herr_t swiftddp_link_name_callback(hid_t group, const char *name, const H5L_info2_t *info, void *data) {
#else
static herr_t swiftddp_link_name_callback(hid_t group, const char *name, const H5L_info_t *info, void *data) {
#endif
    (void)group; (void)info;
    struct swiftddp_name_visit *visit = (struct swiftddp_name_visit *)data;
    return visit->visit(name, visit->context);
}
static inline herr_t swiftddp_link_names(hid_t group, swiftddp_name_visitor visit, void *context) {
    struct swiftddp_name_visit data = { visit, context };
    hsize_t index = 0;
#if H5_VERSION_GE(1, 12, 0)
    return H5Literate2(group, H5_INDEX_NAME, H5_ITER_NATIVE, &index, swiftddp_link_name_callback, &data);
#else
    return H5Literate(group, H5_INDEX_NAME, H5_ITER_NATIVE, &index, swiftddp_link_name_callback, &data);
#endif
}

// Sixteen bytes that identify an open object within its file (its address, or its token), for visiting each object
// once; negative when they cannot be read.
static inline herr_t swiftddp_object_identity(hid_t object, unsigned char identity[16]) {
    for (int i = 0; i < 16; i++) identity[i] = 0;
#if H5_VERSION_GE(1, 12, 0)
    H5O_info2_t info;
    if (H5Oget_info3(object, &info, H5O_INFO_BASIC) < 0) return -1;
    for (int i = 0; i < 16 && i < (int)sizeof(info.token); i++) identity[i] = ((unsigned char *)&info.token)[i];
#else
    H5O_info_t info;
    if (H5Oget_info2(object, &info, H5O_INFO_BASIC) < 0) return -1;
    for (int i = 0; i < (int)sizeof(info.addr); i++) identity[i] = ((unsigned char *)&info.addr)[i];
#endif
    return 0;
}

#endif
