#ifndef DBRECOVERY_CISAL_SHIM_H
#define DBRECOVERY_CISAL_SHIM_H
#include <isa-l/igzip_lib.h>

/// The level buffer igzip's level 1 runs fastest with (ISAL_DEF_LVL1_DEFAULT: a macro expression Swift does not import).
static const unsigned int dbrecovery_isal_level1_buffer_size = ISAL_DEF_LVL1_DEFAULT;
#endif
