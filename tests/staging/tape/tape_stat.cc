// XRootD oss.statlib plug-in for the staging tests: a plain directory (the
// "tape", given as the plug-in parameter) stands behind the disk buffer
// (oss.localroot), so real XRootD answers the way a tape-backed SE does:
//   on tape only   -> stat succeeds with st_rdev OFFLINE|HASBKUP -> gfal2 user.status NEARLINE
//   tape and disk  -> the disk stat, st_rdev HASBKUP               -> ONLINE_AND_NEARLINE
//   disk only      -> the disk stat                                -> ONLINE
// Recalls (tape -> disk) are done by prep.sh, the prepare program.
#include <cerrno>
#include <cstdio>
#include <string>
#include <sys/stat.h>
#include "XrdVersion.hh"
#include "XrdOss/XrdOssStatInfo.hh"
#include "XrdSfs/XrdSfsFlags.hh"

static std::string g_tape;

static int tapeAwareStat(const char *diskPath, struct stat *st, int, XrdOucEnv *, const char *lfn)
{
    struct stat onTape;
    const bool tapeCopy = lfn != nullptr && !g_tape.empty() &&
                          ::stat((g_tape + lfn).c_str(), &onTape) == 0 && S_ISREG(onTape.st_mode);
    if (::stat(diskPath, st) == 0) {
        if (tapeCopy && S_ISREG(st->st_mode)) st->st_rdev = XRDSFS_HASBKUP;
        return 0;
    }
    if (errno != ENOENT || !tapeCopy) return -1;  // errno is already set
    *st = onTape;
    st->st_rdev = XRDSFS_OFFLINE | XRDSFS_HASBKUP;
    return 0;
}

extern "C" XrdOssStatInfo2_t XrdOssStatInfoInit2(XrdOss *, XrdSysLogger *, const char *,
                                                 const char *parms, XrdOucEnv *)
{
    g_tape = parms ? parms : "";
    while (!g_tape.empty() && (g_tape.back() == '/' || g_tape.back() == ' ')) g_tape.pop_back();
    std::fprintf(stderr, "tape_stat: tape directory '%s'\n", g_tape.c_str());
    return tapeAwareStat;
}

XrdVERSIONINFO(XrdOssStatInfoInit2, tapeAwareStat);
