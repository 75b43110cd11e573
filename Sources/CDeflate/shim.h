#ifndef DBRECOVERY_CDEFLATE_SHIM_H
#define DBRECOVERY_CDEFLATE_SHIM_H
#include <libdeflate.h>
#endif
