#ifndef DBRECOVERY_CCURL_SHIM_H
#define DBRECOVERY_CCURL_SHIM_H
#include <curl/curl.h>
#endif
