/*
 * edp_error.c - messages for the EDP_E* codes, generated from the one
 * table in edp_error.h so that codes and messages cannot drift apart.
 */
#include "edp_error.h"

const char *edp_strerror(int err) {
  switch (err) {
  case 0:
    return "success";
#define EDP__ERR_MSG(name, value, msg)                                         \
  case value:                                                                  \
    return msg;
    EDP_ERRNO_MAP(EDP__ERR_MSG)
#undef EDP__ERR_MSG
  default:
    return "unknown error";
  }
}

const char *edp_errname(int err) {
  switch (err) {
  case 0:
    return "OK";
#define EDP__ERR_NAME(name, value, msg)                                        \
  case value:                                                                  \
    return #name;
    EDP_ERRNO_MAP(EDP__ERR_NAME)
#undef EDP__ERR_NAME
  default:
    return "UNKNOWN";
  }
}
