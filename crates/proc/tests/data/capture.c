#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <pthread.h>
#include <sys/mman.h>
#ifndef PR_SET_VMA
#define PR_SET_VMA 0x53564d41
#define PR_SET_VMA_ANON_NAME 0
#endif
static void* th(void*a){pause();return 0;}
int main(int argc,char**argv){
  const char* out=argv[1];
  prctl(PR_SET_NAME,"we ird) (x");
  timer_t t1,t2; struct sigevent sev={0};
  sev.sigev_notify=SIGEV_SIGNAL; sev.sigev_signo=SIGRTMIN; sev.sigev_value.sival_ptr=(void*)0x1234abcdUL;
  timer_create(CLOCK_MONOTONIC,&sev,&t1);
  sev.sigev_notify=SIGEV_THREAD_ID; sev._sigev_un._tid=gettid(); sev.sigev_signo=SIGUSR1;
  timer_create(CLOCK_REALTIME,&sev,&t2);
  timer_t t3; timer_create(CLOCK_PROCESS_CPUTIME_ID,NULL,&t3);
  int efd=eventfd(7,EFD_NONBLOCK|EFD_CLOEXEC);
  char p[512]; snprintf(p,sizeof p,"%s/file with spaces.txt",out);
  int afd=open(p,O_WRONLY|O_CREAT|O_APPEND,0644); write(afd,"hello\n",6);
  char q[512]; snprintf(q,sizeof q,"%s/deleted-me",out);
  int dfd=open(q,O_RDWR|O_CREAT,0644); ftruncate(dfd,4096);
  void* m=mmap(0,4096,PROT_READ|PROT_WRITE,MAP_SHARED,dfd,0); unlink(q);
  snprintf(p,sizeof p,"%s/map with spaces",out);
  int sfd=open(p,O_RDWR|O_CREAT,0644); ftruncate(sfd,8192);
  void* m2=mmap(0,8192,PROT_READ,MAP_PRIVATE,sfd,0);
  prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, mmap(0,4096,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0), 4096, "myname");
  pthread_t pt; pthread_create(&pt,0,th,0);
  printf("%d %d %d %d %d\n",getpid(),efd,afd,dfd,sfd); fflush(stdout);
  pause(); return 0;
}
