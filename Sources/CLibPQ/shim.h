#ifndef DBRECOVERY_CLIBPQ_SHIM_H
#define DBRECOVERY_CLIBPQ_SHIM_H
#include <libpq-fe.h>
#endif
